"""Scenario text shared by several test files (a module, so the text is written once)."""

# Tiny end-to-end scenario on digits: 2 replicates × (dense + magnitude at 2 sparsities) = 6 cells,
# a 3-epoch dense model and 64 calibration examples, so each run takes seconds.
TINY = """
# tiny end-to-end scenario
repeats: 2
model: {train: {epochs: 3}}
calibration: {n: 64}
pruners: [magnitude]
sparsities: [0.5, 0.8]
"""


def tiny_with_output(db, cache) -> str:
    """TINY writing to `db`, with its dense-model cache in `cache`."""
    import textwrap

    return textwrap.dedent(TINY) + f"\noutput: {{db: {db}, cache_dir: {cache}}}\n"

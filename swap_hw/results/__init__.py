"""Results: the SQLite store, reports, comparisons and plots (they read only the store)."""

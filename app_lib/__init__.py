"""The Streamlit app's library: SQL and warehouse access (db, queries, sqlguard),
pure chart builders (charts) and page helpers (ui). Pages hold layout only."""

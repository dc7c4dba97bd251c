"""File I/O both wings share: atomic writes, hashing, safe paths (no etl or trainer imports)."""

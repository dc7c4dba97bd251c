"""The stage framework and the source of raw bytes: the bottom layer of the ETL."""

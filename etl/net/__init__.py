"""The one HTTP client, URL safety, the async transport and HTTP/1.1 wire parsing."""

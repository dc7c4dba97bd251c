"""Raw readers, the JSON-lines reader and text cleaning."""

"""Release contents: dataset card, validation, publishing, the tar writer."""

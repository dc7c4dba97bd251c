"""The image crawler, decode workers, image processing and the chunk format."""

"""Photos in, aligned face chips out: decoding, upload parsing, detection, alignment."""

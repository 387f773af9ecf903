"""Face chips -> dlib ResNet 128-d embeddings, cached by photo content."""

"""The torch reference backend of every op: always available, the ground truth for tests."""

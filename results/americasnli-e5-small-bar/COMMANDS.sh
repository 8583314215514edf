# The AmericasNLI full fine-tuning bar, its lr chosen on held-out shp dev (NOTES.md); repository root

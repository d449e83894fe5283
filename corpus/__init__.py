"""Corpus stages: clean raw pages, split them into train/validation, and tokenize into token files."""

"""Data: built-in benchmark vocabularies (package data), datasets and transforms."""

"""Cleaning a corpus: duplicates within and across sources, and text that evaluation tasks score on."""

"""What a corpus holds, counted from its files: the stats behind `elm-corpus stats` (`stats`),
chunks decoded back to text with their provenance (`chunks`), the HTML report with charts
(`report`) and the number formats they share (`numbers`). Terminal printing lives with the
CLI in `pipelines.views`.
"""

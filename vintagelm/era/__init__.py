"""Is it vintage? The era evaluation of a period model (`vintage eval RUN --era`, `vintage lab
era RUN`): surprise at period vs modern text, anachronisms in samples, minimal pairs, cloze
and which word from held-out text, and the period filter's own precision and recall.

    texts.py     the team-written texts shipped in era/data/ (with their provenance)
    metrics.py   the five measurements and the era card
"""

"""Choosing the classifier's topology: a DEAP NSGA-II search over network genomes.

genome.py (the genes, in one place) -> evaluate.py (one candidate, scored on validation data)
-> evolution.py (the NSGA-II loop as a resumable state machine) -> baselines.py (what the pick
is measured against). The broker drives `evolution.Evolution`; workers run `evaluate`.
"""

"""Evaluation stage: sliding-window inference of fine-tuned runs on real scans, Dice/HD95 reports."""

"""What a run looks like: Chrome-trace timelines (timeline.py) and Gantt charts (gantt.py)."""

"""The two-task demo: its data (``get_data.py``) and its runs and tables (``python -m experiments.demo.run_demo``)."""

"""The processor: per-session state tables and the SLA watch (rules.py is pure; app.py and watch.py are faust)."""

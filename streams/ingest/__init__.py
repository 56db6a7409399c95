"""Ingest: the HTTP front door (service.py), the durable producer (producer.py) and its spool (spool.py)."""

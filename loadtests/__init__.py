"""Locust load runs against an orderbook deployment (see README.md here)."""

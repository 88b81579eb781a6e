"""Campaigns: created from a CSV or JSON list, controlled, sent batch by batch."""

"""Webhooks: the events a client app hears about, fanned out and POSTed to its endpoints."""

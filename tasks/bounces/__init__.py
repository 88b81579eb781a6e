"""Bounces, complaints and the suppression list they feed."""

"""Webhooks: signed notifications (Standard Webhooks) when a job reaches a terminal state."""

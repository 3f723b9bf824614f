"""Robustar ML backend for Label Studio: predictions, webhooks and training jobs."""

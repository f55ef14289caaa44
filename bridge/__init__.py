"""The GitHub bridge: webhooks in as signed acts, summaries and decisions out."""

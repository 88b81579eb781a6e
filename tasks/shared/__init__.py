"""What every behaviour shares: Redis keys and connections, ids, mailboxes, attachments."""

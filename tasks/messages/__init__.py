"""Single messages: accepted by ``POST /api/messages`` or SMTP submission, delivered by tasks."""

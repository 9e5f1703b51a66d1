"""Notifications shared by ticketing and dunning: a durable outbox, zh-CN templates, senders.

Producers call :func:`notify.outbox.enqueue` inside their own transaction; a dispatcher
(:func:`notify.dispatcher.deliver_pending`) sends later with retries. Personal data (names,
phones, e-mail addresses) is decrypted only at send time (domain.md R57–R60).
"""

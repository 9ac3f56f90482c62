"""The local detectors, fast first: ``patterns`` (identifiers with control digits, phones, e-mails, IBAN,
accounts, passports, IPs, addresses) with ``secrets``; ``injection`` (prompt injection heuristics); ``ner``
(natasha for Russian, a name list for English); and the remote layers in ``remote`` (the LLM moderator
and an external ``/v1/moderations`` API). ``apps.moderation.scan`` runs them per the policy."""

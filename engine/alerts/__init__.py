"""Hot-lead alerts to sales: an ``alert: sales`` firing (a pending ``lead_action`` committed with
the event) → decide whether it pages anyone (:mod:`.decide`, pure: cooldown, re-arming, stale
events, who owns the lead) → write the alert and its outbox rows in one transaction
(:mod:`.enqueue`) → the dispatcher delivers them (an email to the rep, a POST to the sales
webhook; :mod:`.content` builds both) with its usual claims, retries and backoff. :mod:`.job` is
the job that runs the two steps every second and at once when this process's ingest commits an
alert (:mod:`.wake`).
"""

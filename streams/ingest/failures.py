"""Which Kafka errors are the failure of one record, and which mean "Kafka is away".

A record too large, an invalid or corrupt record, a refused authorisation or an invalid topic name
will fail again however often it is retried, so spooling it "until Kafka is back" would jam every record
behind it. Everything else (timeouts, connection errors, leader elections) is an outage: the record goes
to the spool and is retried. Pure: it looks only at the exception's type.
"""

from __future__ import annotations

from aiokafka import errors

# Each: the error type and the reason named in the client's answer, the dead letter and the log.
PERMANENT: tuple[tuple[type[BaseException], str], ...] = (
    (errors.MessageSizeTooLargeError, "record_too_large"),
    (errors.RecordTooLargeError, "record_too_large"),
    (errors.RecordListTooLargeError, "record_too_large"),
    (errors.UnsupportedForMessageFormatError, "invalid_record"),
    (errors.InvalidTopicError, "invalid_topic"),
    (errors.TopicAuthorizationFailedError, "not_authorised"),
    (errors.ClusterAuthorizationFailedError, "not_authorised"),
    (errors.TransactionalIdAuthorizationFailed, "not_authorised"),
)

# Of those, the reasons that belong to the record itself: any other record may go through. A spool frame
# failing so is moved aside; one failing for its topic or an authorisation fails every frame alike, so the
# replay waits for the fix as for an outage.
OF_THE_RECORD = frozenset({"record_too_large", "invalid_record"})


def permanent(exc: BaseException) -> str | None:
    """The reason this record can never be delivered, or None if the error is an outage worth retrying.

    ``UnknownTopicOrPartitionError`` is not permanent: Kafka marks it retriable (a partition moving between
    brokers, metadata not yet propagated after provisioning), so it is an outage like a leader election; so
    is ``CorruptRecordException``, a record damaged in transit, which Kafka retries too."""
    for kind, reason in PERMANENT:
        if isinstance(exc, kind):
            return reason
    return None

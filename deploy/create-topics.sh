#!/usr/bin/env bash
# Create xmodal's topics on Apache Kafka with the settings that make the media topic the source of
# truth (docs/operations.md says why each one). Idempotent: existing topics keep their partitions,
# and their configs are brought to the values below with kafka-configs.sh --alter.
#
#   BOOTSTRAP=kafka:9092 PREFIX=xmodal PARTITIONS=12 REPLICATION=3 deploy/create-topics.sh
#
# PARTITIONS must equal XMODAL_TOPIC_PARTITIONS, and it is the ceiling of ingest workers: choose it
# once, generously. Adding partitions to the media topic later moves ids to other partitions and
# breaks per-id ordering (docs/operations.md#partitions).
set -euo pipefail

BOOTSTRAP=${BOOTSTRAP:-kafka:9092}
PREFIX=${PREFIX:-xmodal}
PARTITIONS=${PARTITIONS:-12}
REPLICATION=${REPLICATION:-3}
KAFKA_BIN=${KAFKA_BIN:-/opt/kafka/bin}
MIN_ISR=$(( REPLICATION > 1 ? 2 : 1 ))

# (Values hold no commas: ensure() splits these lists on them.)
# Compacted: the latest event per id is kept for ever, a tombstone (null value) deletes the id once
# delete.retention.ms has passed. 7 days of tombstones: a replay (xmodal reindex) or a worker that
# was down must reach the head of the log within that time, or it misses deletes.
MEDIA_CONFIG="cleanup.policy=compact,min.compaction.lag.ms=3600000,delete.retention.ms=604800000,max.message.bytes=1048588,min.insync.replicas=${MIN_ISR}"
# Dead letters: every failure is kept (not compacted: one id can fail several times), for 30 days.
DLQ_CONFIG="cleanup.policy=delete,retention.ms=2592000000,max.message.bytes=1048588,min.insync.replicas=${MIN_ISR}"
# Requests and replies are worthless after a client's timeout: one hour.
RPC_CONFIG="cleanup.policy=delete,retention.ms=3600000"

ensure() {  # topic, config
  "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$1" --partitions "$PARTITIONS" --replication-factor "$REPLICATION" \
    $(tr ',' '\n' <<<"$2" | sed 's/^/--config /')
  "$KAFKA_BIN/kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" --alter \
    --entity-type topics --entity-name "$1" --add-config "$2"
}

ensure "$PREFIX.media" "$MEDIA_CONFIG"
ensure "$PREFIX.media.dlq" "$DLQ_CONFIG"
ensure "$PREFIX.search.requests" "$RPC_CONFIG"
ensure "$PREFIX.search.replies" "$RPC_CONFIG"
"$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --describe --topic "$PREFIX.media"

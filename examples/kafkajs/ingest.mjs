// Publish text MediaEvents to xmodal from Node.js with kafkajs (wire protocol v1, plain JSON).
//
//   XMODAL_KAFKA_BOOTSTRAP=127.0.0.1:PORT node ingest.mjs ["id=text" ...]
//
// With no arguments a small demo corpus is sent. Events are keyed by item id, so all events of one
// item land in one partition, in order; kafkajs 2's default partitioner is the Java client's murmur2,
// the one every xmodal producer uses.

import { Kafka, Partitioners, logLevel } from "kafkajs";

const bootstrap = process.env.XMODAL_KAFKA_BOOTSTRAP ?? "127.0.0.1:9092";
const prefix = process.env.XMODAL_TOPIC_PREFIX ?? "xmodal";

const DEMO = [
  "cap/crimson-disc=a crimson disc",
  "cap/leaves=green leaves in spring",
  "cap/dog=a dog barking in the park",
  "cap/rain=rain falling on a tin roof",
  "cap/piano=a slow piano melody",
];
const pairs = (process.argv.length > 2 ? process.argv.slice(2) : DEMO).map((arg) => {
  const at = arg.indexOf("=");
  if (at < 1) throw new Error(`expected id=text, got ${JSON.stringify(arg)}`);
  return [arg.slice(0, at), arg.slice(at + 1)];
});

const kafka = new Kafka({ clientId: "xmodal-kafkajs-ingest", brokers: bootstrap.split(","), logLevel: logLevel.WARN });
const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
await producer.connect();
try {
  const messages = pairs.map(([id, text]) => ({
    key: id,
    value: JSON.stringify({ id, op: "upsert", modality: "text", text, metadata: { source: "kafkajs" }, ts: Date.now() }),
  }));
  const acks = await producer.send({ topic: `${prefix}.media`, messages });
  console.log(`sent ${messages.length} events to ${prefix}.media:`, acks.map((a) => `p${a.partition}@${a.baseOffset}`).join(" "));
} finally {
  await producer.disconnect();
}

// Search xmodal from Node.js with kafkajs: produce a SearchRequest (wire protocol v1, plain JSON)
// to <prefix>.search.requests and read the SearchReply, keyed by request_id, from the reply topic.
//
//   npm install
//   XMODAL_KAFKA_BOOTSTRAP=127.0.0.1:PORT node search.mjs "a red circle" [k] [modality,...]
//
// XMODAL_TOPIC_PREFIX (default xmodal), XMODAL_SEARCH_TIMEOUT_S (default 10) and XMODAL_TOPIC_PARTITIONS
// (default 4, for a reply topic this script has to create) are read as xmodal reads them.
// The reply JSON goes to stdout, timings to stderr. Exit code 0: ok reply; 1: error reply or timeout.

import { randomUUID } from "node:crypto";
import { Kafka, Partitioners, logLevel } from "kafkajs";

const bootstrap = process.env.XMODAL_KAFKA_BOOTSTRAP ?? "127.0.0.1:9092";
const prefix = process.env.XMODAL_TOPIC_PREFIX ?? "xmodal";
const timeoutMs = 1000 * Number(process.env.XMODAL_SEARCH_TIMEOUT_S ?? 10);
const [text = "a red circle", k = "5", modalities] = process.argv.slice(2);

const requestsTopic = `${prefix}.search.requests`;
const replyTopic = `${prefix}.search.replies`; // the service answers on reply_to: any topic under `${prefix}.` but the media, DLQ and requests topics
const requestId = randomUUID();

const kafka = new Kafka({ clientId: "xmodal-kafkajs-example", brokers: bootstrap.split(","), logLevel: logLevel.WARN });
const admin = kafka.admin();
// kafkajs 2's default partitioner is the Java client's murmur2: same key, same partition as xmodal's producers.
const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
// kafkajs has no assign(): a throwaway group reads the reply topic. Group joins on tansu take about half
// of sessionTimeout, so keep it short. A fetch in flight when we seek is waited out before the seek takes
// effect: a short maxWaitTimeInMs (default 5000) keeps that from adding seconds to the first reply.
const consumer = kafka.consumer({
  groupId: `xmodal-kafkajs-${requestId}`,
  sessionTimeout: 6000,
  heartbeatInterval: 1000,
  maxWaitTimeInMs: 100,
});

const t0 = Date.now();
const elapsed = () => `${Date.now() - t0} ms`;

try {
  // 1. Where the reply topic ends now. The reply is produced after our request, so it lands at or after
  //    these offsets; reading from them cannot miss it, whenever the consumer gets going.
  await admin.connect();
  // The query service creates the topics; creating the reply topic here too (a no-op when it exists)
  // turns "no service yet" into a plain timeout instead of a metadata error.
  if (!(await admin.listTopics()).includes(replyTopic)) {
    const numPartitions = Number(process.env.XMODAL_TOPIC_PARTITIONS ?? 4);
    await admin.createTopics({ topics: [{ topic: replyTopic, numPartitions }], waitForLeaders: true });
  }
  const ends = await admin.fetchTopicOffsets(replyTopic);
  await admin.disconnect();

  // 2. Start reading replies and keep the one that answers our request_id (others share the topic).
  let answer;
  const replied = new Promise((resolve) => (answer = resolve));
  const joined = new Promise((resolve) => consumer.on(consumer.events.GROUP_JOIN, resolve));
  await consumer.connect();
  await consumer.subscribe({ topic: replyTopic, fromBeginning: false });
  await consumer.run({
    eachMessage: async ({ message }) => {
      if (message.key?.toString() !== requestId) return; // replies are keyed by request_id
      answer(JSON.parse(message.value.toString()));
    },
  });
  await joined;
  for (const { partition, offset } of ends) consumer.seek({ topic: replyTopic, partition, offset });
  console.error(`reply reader ready after ${elapsed()}`);

  // 3. Send the request, keyed by its id, with a deadline the service honours.
  const request = {
    request_id: requestId,
    reply_to: replyTopic,
    query: { text },
    k: Number(k),
    deadline_ms: Date.now() + timeoutMs,
  };
  if (modalities) request.modalities = modalities.split(",");
  await producer.connect();
  const sent = Date.now();
  await producer.send({ topic: requestsTopic, messages: [{ key: requestId, value: JSON.stringify(request) }] });

  let timer;
  const timedOut = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no reply to ${requestId} on ${replyTopic} within ${timeoutMs} ms`)), timeoutMs);
  });
  const reply = await Promise.race([replied, timedOut]);
  clearTimeout(timer);
  console.error(`round trip ${Date.now() - sent} ms (service took ${reply.took_ms.toFixed(1)} ms)`);
  console.log(JSON.stringify(reply, null, 2));
  process.exitCode = reply.ok ? 0 : 1;
} catch (e) {
  console.error(`search failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  await Promise.allSettled([consumer.disconnect(), producer.disconnect(), admin.disconnect()]);
}

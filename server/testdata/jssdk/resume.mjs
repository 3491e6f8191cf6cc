// Streams linear16 audio through earshot with the official JS SDK, and
// lets the Go test kill the stream's region halfway: it prints KILL once
// the first finals are in, waits for GO on stdin, sends the rest, and
// prints what the SDK saw as one JSON line.
import { DeepgramClient } from "@deepgram/sdk";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";

const [baseUrl, audioPath, halfArg] = process.argv.slice(2);
const pcm = readFileSync(audioPath);
const half = Number(halfArg);
const seen = { opens: 0, closes: [], errors: [], finals: [] };

const until = (cond, ms = 10000) =>
  new Promise((resolve, reject) => {
    const start = Date.now();
    const tick = () => {
      if (cond()) return resolve();
      if (Date.now() - start > ms) return reject(new Error("timed out"));
      setTimeout(tick, 5);
    };
    tick();
  });

const client = new DeepgramClient({ apiKey: "test-key", baseUrl });
const conn = await client.listen.v1.connect({
  model: "nova-3", encoding: "linear16", sample_rate: "16000",
  interim_results: "true", endpointing: "100",
});
conn.on("open", () => seen.opens++);
conn.on("close", (e) => seen.closes.push(e?.code ?? null));
conn.on("error", (e) => seen.errors.push(String(e?.message ?? e)));
conn.on("message", (m) => {
  if (m.type === "Results" && m.is_final) {
    for (const w of m.channel.alternatives[0].words) seen.finals.push(`${w.word}@${w.start}-${w.end}`);
  }
});
conn.connect();
await conn.waitForOpen();

const send = (from, to) => {
  for (let i = from; i < to; i += 3200) conn.sendMedia(pcm.subarray(i, Math.min(i + 3200, to)));
};
send(0, half);
await until(() => seen.finals.length >= 3);
console.log("KILL");
const lines = createInterface({ input: process.stdin });
for await (const line of lines) if (line.trim() === "GO") break;
send(half, pcm.length);
try {
  await until(() => seen.finals.length >= 10);
} catch {}
conn.sendCloseStream();
try {
  await until(() => seen.closes.length > 0, 5000);
} catch {}
console.log(JSON.stringify(seen));
process.exit(0);

// The `ollama` JavaScript client (npm) against ollamux: list, ps, chat (whole and
// streamed). Prints one JSON object of what it saw; tests/realbox/test_clients.py
// checks it. Usage: node ollama_client.mjs HOST MODEL NUM_PREDICT
import { Ollama } from "ollama";

const [host, model, numPredict] = process.argv.slice(2);
if (!host || !model || !numPredict) {
  console.error("usage: node ollama_client.mjs HOST MODEL NUM_PREDICT");
  process.exit(2);
}
const client = new Ollama({ host });
const options = { num_predict: Number(numPredict) };
const messages = [{ role: "user", content: "say something" }];

const listed = await client.list();
const running = await client.ps();
const whole = await client.chat({ model, messages, options, stream: false });

const parts = [];
for await (const part of await client.chat({ model, messages, options, stream: true })) {
  parts.push(part);
}
const last = parts[parts.length - 1];

console.log(
  JSON.stringify({
    models: listed.models.map((m) => m.name),
    running: running.models.map((m) => m.name),
    chat: {
      model: whole.model,
      role: whole.message.role,
      content: whole.message.content,
      done: whole.done,
      done_reason: whole.done_reason,
      eval_count: whole.eval_count,
    },
    stream: {
      chunks: parts.length,
      content: parts.map((p) => p.message.content).join(""),
      done: last.done,
      done_reason: last.done_reason,
      eval_count: last.eval_count,
      not_done_before_last: parts.slice(0, -1).every((p) => p.done === false),
    },
  }),
);

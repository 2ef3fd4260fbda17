// One streaming chat with the official `openai` npm package, as a Node user would write it.
// Env: OPENAI_BASE_URL (the gateway's /openai/v1), OPENAI_API_KEY (an aimesh API key), MODEL.
// Prints one JSON line: the text, the chunk count, the final usage and the finish reason.
import OpenAI from "openai";

const client = new OpenAI({ maxRetries: 0 });
const stream = await client.chat.completions.create({
  model: process.env.MODEL,
  messages: [
    { role: "system", content: process.env.CONTEXT },
    { role: "user", content: process.env.QUESTION },
  ],
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let chunks = 0;
let usage = null;
let finish = null;
for await (const chunk of stream) {
  chunks += 1;
  for (const choice of chunk.choices) {
    text += choice.delta?.content ?? "";
    finish = choice.finish_reason ?? finish;
  }
  if (chunk.usage) usage = chunk.usage;
}
console.log(JSON.stringify({ text, chunks, usage, finish }));

// One call with an official Node.js SDK at its default base URL, as an
// application would make it: no CA setting, no proxy setting.
// Usage: node sdk_check.cjs openai|anthropic
// Prints the answer's text and exits 0, or prints the error and exits 1.
// The test copies this file next to the SDKs' node_modules.

const which = process.argv[2];

async function main() {
  if (which === 'openai') {
    const OpenAI = require('openai');
    const client = new OpenAI({ apiKey: 'sk-test', maxRetries: 0, timeout: 15000 });
    const r = await client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'Say hello' }],
    });
    return r.choices[0].message.content;
  }
  if (which === 'anthropic') {
    const Anthropic = require('@anthropic-ai/sdk');
    const client = new Anthropic({ apiKey: 'sk-ant-test', maxRetries: 0, timeout: 15000 });
    const r = await client.messages.create({
      model: 'claude-sonnet-4-5',
      max_tokens: 64,
      messages: [{ role: 'user', content: 'Say hello' }],
    });
    return r.content[0].text;
  }
  throw new Error(`unknown SDK ${which}`);
}

main().then(
  (text) => { console.log(`ok ${text}`); },
  (e) => { console.log(`error ${e && (e.cause ? `${e.message}: ${e.cause.code || e.cause.message}` : e.message)}`); process.exit(1); },
);

//! ChatModel adapters: offline planner, OpenAI-compatible, Anthropic, Gemini.

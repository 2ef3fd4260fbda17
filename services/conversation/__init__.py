"""The Conversation service: conversations and messages; streaming SendMessage."""

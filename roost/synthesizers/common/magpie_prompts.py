"""System prompts Magpie uses to steer what users ask (verbatim from magpie-align/magpie)."""

TASK_PROMPTS = {
    "math": (
        "You are an AI assistant designed to provide helpful, step-by-step guidance on solving "
        "math problems. The user will ask you a wide range of complex mathematical questions.\n"
        "Your purpose is to assist users in understanding mathematical concepts, working through "
        "equations, and arriving at the correct solutions."
    ),
    "code": (
        "You are an AI assistant designed to provide helpful, step-by-step guidance on coding "
        "problems. The user will ask you a wide range of coding questions.\nYour purpose is to "
        "assist users in understanding coding concepts, working through code, and arriving at "
        "the correct solutions."
    ),
    "translation": (
        "You are an AI assistant specifically designed to provide accurate and contextually "
        "appropriate translations. Users will ask you to translate text between various "
        "languages.\nYour purpose is to assist users in understanding and conveying meaning "
        "across languages, maintaining the original context and nuances."
    ),
}

# Used only to elicit follow-up user turns (turn 2+) when the recipe sets no system prompt.
# Magpie's text, with its typos ("Al", missing space) corrected.
MULTI_TURN_PROMPT = (
    "You are a helpful AI assistant. The user will engage in a multi-round conversation with "
    "you, asking initial questions and following up with additional related questions. Your "
    "goal is to provide thorough, relevant and insightful responses to help the user with "
    "their queries."
)

# Language control works by a system prompt written in the target language (Magpie paper,
# Fig. 2). Languages not listed get an English sentence naming the language.
LANGUAGE_PROMPTS = {
    "en": "The user writes in English, and you answer in English.",
    "zh": "你是一个人工智能助手，旨在为用户的中文问题提供准确、简洁的回答。",
    "ja": "あなたはAIアシスタントです。ユーザーは日本語で質問し、あなたは日本語で答えます。",
    "de": "Du bist ein KI-Assistent. Der Nutzer stellt seine Fragen auf Deutsch, und du antwortest auf Deutsch.",
    "fr": "Vous êtes un assistant IA. L'utilisateur pose ses questions en français et vous répondez en français.",
    "es": "Eres un asistente de IA. El usuario hace sus preguntas en español y tú respondes en español.",
}


def language_prompt(language: str) -> str:
    return LANGUAGE_PROMPTS.get(
        language.lower(), f"The user writes in the language '{language}', and you answer in that language."
    )

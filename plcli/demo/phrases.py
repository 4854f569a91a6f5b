"""Short everyday chat phrases of ``plcli demo-data``, by language (ISO 639-1).

60 per language, 2-6 words, distinct after label normalisation, a few with numbers and times.
``--phrases N`` uses the first N. Written as people would type them: the label normaliser has
work to do.
"""

from __future__ import annotations

LANGUAGE_PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "See you tomorrow!", "On my way.", "Running late, sorry!", "Call me when you can.",
        "Sounds good to me.", "I'm at home.", "What time is dinner?", "Thanks so much!",
        "Happy birthday!", "Can you pick me up?", "I'll be there soon.", "Good morning!",
        "Good night, sleep well.", "Where are you?", "Let's meet at noon.", "No worries at all.",
        "I miss you.", "Love you too.", "Just landed.", "Stuck in traffic.",
        "Did you get my message?", "Talk to you later.", "Yes, of course.", "No, not today.",
        "Maybe next week.", "Have a nice weekend!", "The meeting is cancelled.", "Don't forget the keys.",
        "I need more coffee.", "Let me check.", "Be right back.", "Congrats on the new job!",
        "How was your day?", "Bring some milk, please.", "The train is delayed.", "I'm feeling sick today.",
        "Are you free tonight?", "Let's order pizza.", "I'll call you back.", "Please send the photos.",
        "Take care of yourself.", "It's raining again.", "See you at the gym.", "Almost done here.",
        "Can we reschedule?", "Great job today!", "I'm so tired.", "Where did you park?",
        "Dinner is ready.", "Waiting outside.", "Good luck with the exam!", "The kids are asleep.",
        "Check your email.", "Lunch tomorrow?", "I found your wallet.", "Let's go for a walk.",
        "Sorry, wrong chat.", "The door is open.", "Text me the address.", "Welcome home!",
    ),
    "de": (
        "Bis morgen!", "Bin unterwegs.", "Sorry, ich komme später!", "Ruf mich an, wenn du kannst.",
        "Klingt gut.", "Ich bin zu Hause.", "Wann gibt es Abendessen?", "Vielen Dank!",
        "Alles Gute zum Geburtstag!", "Kannst du mich abholen?", "Bin in 5 Minuten da.", "Guten Morgen!",
        "Gute Nacht, schlaf gut.", "Wo bist du?", "Treffen wir uns um 12?", "Kein Problem.",
        "Ich vermisse dich.", "Hab dich auch lieb.", "Gerade gelandet.", "Ich stehe im Stau.",
        "Hast du meine Nachricht bekommen?", "Bis später!", "Ja, natürlich.", "Nein, heute nicht.",
        "Vielleicht nächste Woche.", "Schönes Wochenende!", "Das Meeting fällt aus.", "Vergiss die Schlüssel nicht.",
        "Ich brauche mehr Kaffee.", "Ich schau mal nach.", "Bin gleich zurück.", "Glückwunsch zum neuen Job!",
        "Wie war dein Tag?", "Bring bitte Milch mit.", "Der Zug hat 10 Minuten Verspätung.", "Mir geht es heute nicht gut.",
        "Hast du heute Abend Zeit?", "Lass uns Pizza bestellen.", "Ich rufe dich zurück.", "Schick mir bitte die Fotos.",
        "Pass auf dich auf.", "Es regnet schon wieder.", "Wir sehen uns im Fitnessstudio.", "Fast fertig hier.",
        "Können wir das verschieben?", "Gut gemacht heute!", "Ich bin so müde.", "Wo hast du geparkt?",
        "Das Essen ist fertig.", "Ich warte draußen.", "Viel Glück bei der Prüfung!", "Die Kinder schlafen schon.",
        "Schau mal in deine Mails.", "Mittagessen morgen?", "Ich habe deinen Geldbeutel gefunden.", "Komm um 7:30 vorbei.",
        "Sorry, falscher Chat.", "Die Tür ist offen.", "Schick mir die Adresse.", "Willkommen zu Hause!",
    ),
    "es": (
        "¡Hasta mañana!", "Voy de camino.", "¡Perdón, llego tarde!", "Llámame cuando puedas.",
        "Me parece bien.", "Estoy en casa.", "¿A qué hora cenamos?", "¡Muchas gracias!",
        "¡Feliz cumpleaños!", "¿Me puedes recoger?", "Llego en 5 minutos.", "¡Buenos días!",
        "Buenas noches, que descanses.", "¿Dónde estás?", "Nos vemos a las 12.", "No pasa nada.",
        "Te echo de menos.", "Yo también te quiero.", "Acabo de aterrizar.", "Estoy en un atasco.",
        "¿Te llegó mi mensaje?", "Hablamos luego.", "Sí, claro.", "No, hoy no.",
        "Quizás la semana que viene.", "¡Buen fin de semana!", "Se cancela la reunión.", "No olvides las llaves.",
        "Necesito más café.", "Déjame mirar.", "Ahora vuelvo.", "¡Enhorabuena por el trabajo nuevo!",
        "¿Qué tal tu día?", "Trae leche, por favor.", "El tren llega 10 minutos tarde.", "Hoy me encuentro mal.",
        "¿Estás libre esta noche?", "¿Pedimos una pizza?", "Te devuelvo la llamada.", "Mándame las fotos, por favor.",
        "Cuídate mucho.", "Está lloviendo otra vez.", "Nos vemos en el gimnasio.", "Ya casi termino.",
        "¿Lo podemos cambiar de día?", "¡Buen trabajo hoy!", "Estoy muy cansado.", "¿Dónde aparcaste?",
        "La cena está lista.", "Te espero fuera.", "¡Suerte en el examen!", "Los niños ya están dormidos.",
        "Revisa tu correo.", "¿Comemos juntos mañana?", "Encontré tu cartera.", "Salgo a las 7:30.",
        "Perdón, me equivoqué de chat.", "La puerta está abierta.", "Pásame la dirección.", "¡Bienvenido a casa!",
    ),
    "ru": (
        "До завтра!", "Я уже еду.", "Извини, опаздываю!", "Позвони, когда сможешь.",
        "Звучит отлично.", "Я дома.", "Во сколько ужин?", "Большое спасибо!",
        "С днём рождения!", "Можешь меня забрать?", "Буду через 5 минут.", "Доброе утро!",
        "Спокойной ночи, сладких снов.", "Ты где?", "Встретимся в 12?", "Ничего страшного.",
        "Я скучаю по тебе.", "Я тебя тоже люблю.", "Только что приземлился.", "Стою в пробке.",
        "Ты получил моё сообщение?", "Поговорим позже.", "Да, конечно.", "Нет, не сегодня.",
        "Может, на следующей неделе.", "Хороших выходных!", "Встреча отменяется.", "Не забудь ключи.",
        "Мне нужно ещё кофе.", "Сейчас проверю.", "Выхожу в 7:30.", "Поздравляю с новой работой!",
        "Как прошёл день?", "Купи молока, пожалуйста.", "Поезд опаздывает на 10 минут.", "Я сегодня заболел.",
        "Ты свободен вечером?", "Давай закажем пиццу.", "Я тебе перезвоню.", "Пришли фотографии, пожалуйста.",
        "Береги себя.", "Опять дождь.", "Увидимся в спортзале.", "Почти закончил.",
        "Можем перенести?", "Отлично поработал сегодня!", "Я так устал.", "Где ты припарковался?",
        "Ужин готов.", "Жду тебя на улице.", "Удачи на экзамене!", "Дети уже спят.",
        "Проверь почту.", "Обедаем завтра?", "Я нашёл твой кошелёк.", "Пойдём погуляем.",
        "Ой, не тот чат.", "Дверь открыта.", "Скинь мне адрес.", "С возвращением домой!",
    ),
}  # fmt: skip

/* SMTP transport: being written */

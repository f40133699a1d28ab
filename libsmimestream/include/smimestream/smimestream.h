/* smimestream: one-pass signed S/MIME e-mail.  Include this header. */
#ifndef SMIMESTREAM_H
#define SMIMESTREAM_H

#include <smimestream/sms-error.h>
#include <smimestream/sms-signer.h>
#include <smimestream/sms-source.h>
#include <smimestream/sms-message.h>
#include <smimestream/sms-smtp.h>

#define SMS_DEFINE_CLEANUP(type, func)                                                      \
    static inline void func##p(type **p) { if (*p) func(*p); }
#define SMS_CLEANUP(func) __attribute__((cleanup(func##p)))

#endif

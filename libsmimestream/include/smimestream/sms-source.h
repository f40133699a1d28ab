/* smimestream: attachment sources, each read exactly once. */
#ifndef SMIMESTREAM_SMS_SOURCE_H
#define SMIMESTREAM_SMS_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sms_source sms_source;

/* Read up to cap bytes into buf; set *ret_n (0 = end of data).  Return 0 or
 * a negative SMS_ERR_*; write a reason into err (err_size bytes). */
typedef int (*sms_source_read_func)(void *user_data, void *buf, size_t cap, size_t *ret_n,
                                    char *err, size_t err_size);
typedef void (*sms_destroy_func)(void *user_data);

/* Read from fd (a file, pipe, FIFO, socket or device).  With own_fd the
 * source closes it.  The size is known for regular files. */
int sms_source_new_fd(int fd, int own_fd, sms_source **ret_source);
/* Open path now (so a missing file fails before anything is sent).  "-" is
 * standard input.  Opening a FIFO does not block: the first read waits for
 * the writer. */
int sms_source_new_path(const char *path, sms_source **ret_source, char *err, size_t err_size);
int sms_source_new_callback(sms_source_read_func read, void *user_data, sms_destroy_func destroy,
                            int64_t size, sms_source **ret_source);
void sms_source_free(sms_source *src);

/* The size in bytes, or -1 when unknown. */
int64_t sms_source_get_size(const sms_source *src);
/* The file name part of the path (for the attachment name), or NULL. */
const char *sms_source_get_name(const sms_source *src);

#ifdef __cplusplus
}
#endif
#endif

/* smimestream: finding and loading signer plugins. */
#include "config.h"

#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sms-core-private.h"

/* "pkcs11:..." -> "pkcs11"; a plain path -> "file".  A name that exists as a
 * file is a path even if it looks like "x:y". */
static void spec_scheme(const char *spec, char *scheme, size_t size)
{
    size_t i = 0;
    if (isalpha((unsigned char)spec[0])) {
        while (spec[i] && (isalnum((unsigned char)spec[i]) || spec[i] == '+' || spec[i] == '-' ||
                           spec[i] == '.'))
            i++;
    }
    if (i > 1 && i < size && spec[i] == ':' && access(spec, F_OK) != 0) {
        for (size_t j = 0; j < i; j++)
            scheme[j] = (char)tolower((unsigned char)spec[j]);
        scheme[i] = '\0';
        return;
    }
    snprintf(scheme, size, "file");
}

static const char *module_for_scheme(const char *scheme)
{
    return strcmp(scheme, "file") == 0 ? "software" : scheme;
}

static bool handles_scheme(const sms_plugin_descriptor *d, const char *scheme)
{
    for (const char *const *s = d->schemes; s && *s; s++)
        if (strcmp(*s, scheme) == 0)
            return true;
    return false;
}

/* Try dir/name.so.  Returns 1 when loaded, 0 when absent, <0 on error. */
static int try_load(const char *dir, const char *module, const char *scheme, void **ret_handle,
                    const sms_plugin_descriptor **ret_desc, char *err, size_t err_size)
{
    sms__buf path;
    sms__buf_init(&path);
    sms__buf_printf(&path, "%s/%s.so", dir, module);
    sms__buf_append(&path, "", 1);
    if (path.failed)
        return SMS_ERR_NOMEM;
    if (access((char *)path.data, F_OK) != 0) {
        sms__buf_free(&path);
        return 0;
    }
    void *h = dlopen((char *)path.data, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        sms__set_err(err, err_size, "cannot load signer plugin %s: %s", (char *)path.data,
                     dlerror());
        sms__buf_free(&path);
        return SMS_ERR_UNAVAILABLE;
    }
    const sms_plugin_descriptor *d = dlsym(h, SMS_PLUGIN_SYMBOL);
    if (!d || d->abi_version != SMS_PLUGIN_ABI_VERSION ||
        d->struct_size < offsetof(sms_plugin_descriptor, open) + sizeof d->open || !d->open ||
        !handles_scheme(d, scheme)) {
        sms__set_err(err, err_size,
                     "%s is not a smimestream signer plugin for '%s:' (missing symbol %s, "
                     "wrong ABI version, or scheme not listed)",
                     (char *)path.data, scheme, SMS_PLUGIN_SYMBOL);
        dlclose(h);
        sms__buf_free(&path);
        return SMS_ERR_UNAVAILABLE;
    }
    sms__buf_free(&path);
    *ret_handle = h;
    *ret_desc = d;
    return 1;
}

static bool running_uninstalled(void)
{
    Dl_info info;
    const char *root = SMS_BUILD_ROOT;
    if (!dladdr((void *)running_uninstalled, &info) || !info.dli_fname)
        return false;
    return strncmp(info.dli_fname, root, strlen(root)) == 0 && info.dli_fname[strlen(root)] == '/';
}

static int find_plugin(const char *scheme, void **ret_handle, const sms_plugin_descriptor **ret_desc,
                       char *err, size_t err_size)
{
    const char *module = module_for_scheme(scheme);
    /* secure_getenv: a setuid/setgid program never takes plugins from the
     * caller's environment. */
    const char *env = secure_getenv("SMIMESTREAM_PLUGIN_DIR");
    int r;

    if (env && *env) {
        char *dirs = strdup(env), *save = NULL;
        if (!dirs)
            return SMS_ERR_NOMEM;
        for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
            r = try_load(d, module, scheme, ret_handle, ret_desc, err, err_size);
            if (r != 0) {
                free(dirs);
                return r < 0 ? r : SMS_OK;
            }
        }
        free(dirs);
    }
    r = try_load(SMS_PLUGIN_DIR, module, scheme, ret_handle, ret_desc, err, err_size);
    if (r != 0)
        return r < 0 ? r : SMS_OK;

    /* Uninstalled: the build tree keeps each plugin in plugins/NAME/.  Only
     * searched when this code itself runs from the build tree, so an
     * installed copy never loads modules from a stale build directory. */
    if (!running_uninstalled()) {
        sms__set_err(err, err_size,
                     "no signer plugin for '%s:' (looked for %s.so in $SMIMESTREAM_PLUGIN_DIR "
                     "and %s); install it or set SMIMESTREAM_PLUGIN_DIR",
                     scheme, module, SMS_PLUGIN_DIR);
        return SMS_ERR_UNAVAILABLE;
    }
    sms__buf dir;
    sms__buf_init(&dir);
    sms__buf_printf(&dir, "%s/%s", SMS_BUILD_PLUGIN_DIR, module);
    sms__buf_append(&dir, "", 1);
    if (dir.failed)
        return SMS_ERR_NOMEM;
    r = try_load((char *)dir.data, module, scheme, ret_handle, ret_desc, err, err_size);
    sms__buf_free(&dir);
    if (r != 0)
        return r < 0 ? r : SMS_OK;

    sms__set_err(err, err_size,
                 "no signer plugin for '%s:' (looked for %s.so in $SMIMESTREAM_PLUGIN_DIR, %s "
                 "and the build tree); install it or set SMIMESTREAM_PLUGIN_DIR",
                 scheme, module, SMS_PLUGIN_DIR);
    return SMS_ERR_UNAVAILABLE;
}

int sms_signer_open(const char *spec, const sms_signer_options *options, sms_signer **ret_signer,
                    char *err, size_t err_size)
{
    sms_return_val_if_fail(spec != NULL && *spec, SMS_ERR_INVALID_ARG);
    sms_return_val_if_fail(ret_signer != NULL, SMS_ERR_INVALID_ARG);
    /* Plugins get a full-size, zeroed struct whatever the caller's size, so
     * a plugin built against a newer header never reads past the caller's. */
    sms_signer_options opts = { .struct_size = sizeof opts };
    if (options)
        memcpy(&opts, options,
               options->struct_size < sizeof opts ? options->struct_size : sizeof opts);
    opts.struct_size = sizeof opts;
    options = &opts;

    char scheme[32];
    spec_scheme(spec, scheme, sizeof scheme);

    void *handle = NULL;
    const sms_plugin_descriptor *desc = NULL;
    int r = find_plugin(scheme, &handle, &desc, err, err_size);
    if (r < 0)
        return r;

    sms_signer *signer = NULL;
    if (err && err_size)
        err[0] = '\0';
    r = desc->open(spec, options, &signer, err, err_size);
    if (r < 0 || !signer) {
        if (err && err_size && !err[0])
            /* Not the spec itself: a pkcs11: URI may carry pin-value=. */
            sms__set_err(err, err_size, "signer plugin '%s' could not open the '%s:' signer: %s",
                         desc->name, scheme, sms_strerror(r < 0 ? r : SMS_ERR_SIGNER));
        dlclose(handle);
        return r < 0 ? r : SMS_ERR_SIGNER;
    }
    sms__signer_set_module(signer, handle);
    *ret_signer = signer;
    return SMS_OK;
}

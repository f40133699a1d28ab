/* A PKCS#11 module that forwards every call to SoftHSM2 and makes C_Sign
 * fail on demand.
 *
 * It exists because a real card cannot be pulled out in CI: the tests need
 * a token that works during the pre-flight (login, key, certificate) and
 * then disappears at the moment of signing, after the attachments were
 * streamed.  While the file named by $FAIL_SIGN_FILE exists, C_Sign returns
 * the CKR_* code named in that file (CKR_DEVICE_REMOVED when it is empty or
 * unknown), exactly as a card pulled from its reader would.  Likewise,
 * while $FAIL_LOGIN_FILE exists, C_Login returns the code named there
 * (CKR_PIN_LOCKED by default): SoftHSM2 never locks a PIN by itself.
 *
 * Use it with module-path= in the URI:
 *   pkcs11:token=ci;object=sig?module-path=/path/failing-module.so
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#ifndef SOFTHSM_PATH
#define SOFTHSM_PATH "/usr/lib/softhsm/libsofthsm2.so"
#endif

static CK_FUNCTION_LIST wrapped;
static CK_FUNCTION_LIST *real;
static void *handle;

static CK_RV fail_code(const char *env, CK_RV dflt)
{
    const char *path = getenv(env);
    if (!path || access(path, F_OK) != 0)
        return CKR_OK;
    char word[64] = "";
    FILE *f = fopen(path, "r");
    if (f) {
        if (!fgets(word, sizeof word, f))
            word[0] = '\0';
        fclose(f);
    }
    word[strcspn(word, " \r\n")] = '\0';
    if (strcmp(word, "CKR_FUNCTION_FAILED") == 0)
        return CKR_FUNCTION_FAILED;
    if (strcmp(word, "CKR_TOKEN_NOT_PRESENT") == 0)
        return CKR_TOKEN_NOT_PRESENT;
    if (strcmp(word, "CKR_SESSION_HANDLE_INVALID") == 0)
        return CKR_SESSION_HANDLE_INVALID;
    if (strcmp(word, "CKR_DEVICE_REMOVED") == 0)
        return CKR_DEVICE_REMOVED;
    if (strcmp(word, "CKR_PIN_LOCKED") == 0)
        return CKR_PIN_LOCKED;
    return dflt;
}

static CK_RV failing_C_Sign(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG data_len,
                            CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    CK_RV rv = fail_code("FAIL_SIGN_FILE", CKR_DEVICE_REMOVED);
    if (rv != CKR_OK) {
        /* End the operation on the real token, as a removal would. */
        CK_ULONG n = *sig_len;
        real->C_Sign(session, data, data_len, sig, &n);
        return rv;
    }
    return real->C_Sign(session, data, data_len, sig, sig_len);
}

static CK_RV failing_C_Login(CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                             CK_ULONG pin_len)
{
    CK_RV rv = fail_code("FAIL_LOGIN_FILE", CKR_PIN_LOCKED);
    return rv != CKR_OK ? rv : real->C_Login(session, user, pin, pin_len);
}

__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (!list)
        return CKR_ARGUMENTS_BAD;
    if (!real) {
        const char *path = getenv("FAILING_MODULE_TARGET");
        handle = dlopen(path && *path ? path : SOFTHSM_PATH, RTLD_NOW | RTLD_LOCAL);
        if (!handle)
            return CKR_GENERAL_ERROR;
        CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(handle, "C_GetFunctionList");
        if (!get || get(&real) != CKR_OK || !real)
            return CKR_GENERAL_ERROR;
        wrapped = *real;
        wrapped.C_Sign = failing_C_Sign;
        wrapped.C_Login = failing_C_Login;
    }
    *list = &wrapped;
    return CKR_OK;
}

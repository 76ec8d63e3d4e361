/* The smallest guest: one line on stdout, exit 0. */
#include <stdio.h>

int main(void)
{
    printf("hello from the guest\n");
    return 0;
}
